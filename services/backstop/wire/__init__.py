"""Wire contract, version 1: pydantic models of the input and output records (DESIGN.md section 5)."""
