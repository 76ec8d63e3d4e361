"""pyqemu-nbd: qemu-nbd's NBD server (and its ``-L`` client) over common.nbd.

``main`` parses qemu-nbd's options; ``export`` answers options and commands
for one exported block node (pure logic over the engine's messages);
``transport`` owns sockets and threads; ``listing`` is ``-L``.
"""
