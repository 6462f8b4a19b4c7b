"""backstop: an event-sourced insurance-fund and auto-deleveraging ledger for perpetual-futures venues."""

__version__ = "0.1.0"
