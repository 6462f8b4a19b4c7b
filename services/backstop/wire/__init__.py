"""Wire contract, version 1: pydantic models of the input and output records (docs/design.md §5)."""
