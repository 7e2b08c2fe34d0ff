"""Dataset readers and generators. Each produces the Helen folder layout or reads it into `Record`s."""
