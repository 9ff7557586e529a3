"""What a cell reads and binds (analysis), and moving values to and from workers (shipping)."""
