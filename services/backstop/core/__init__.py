"""The pure domain core: a synchronous, deterministic fold over the journal. No I/O, no clock, no floats."""
