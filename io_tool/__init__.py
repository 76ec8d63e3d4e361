"""pyqemu-io: QEMU's I/O tester (not yet implemented)."""
