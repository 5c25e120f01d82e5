"""Names and tags of the kinds of thing ftlab knows, below the foundation: stages register behaviour against them."""
