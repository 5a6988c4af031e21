"""The client side: the API over ZeroMQ, the command registry, and the verbs built on them."""
