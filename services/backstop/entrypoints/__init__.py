"""Entry points: the `backstop` command line and the service."""
