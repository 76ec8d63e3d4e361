"""pyqemu-nbd: the NBD server (not yet implemented)."""
