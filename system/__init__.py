"""The PC system emulator (not yet implemented)."""
