"""Small shared utilities (I/O, seeding) with no heavy dependencies."""
