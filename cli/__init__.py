"""farensectl: the thin Click front end of the farensed library."""
