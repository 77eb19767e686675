"""Entities: the tables steps hand to each other. `schema` declares them (pure); `store` reads, writes
and logs them."""
