"""Program loading for the user-mode emulators.

- :mod:`.elf`: validate an ELF program the way qemu-user 7.2 does (same messages and
  exit statuses), map its PT_LOAD segments and its interpreter (PT_INTERP, looked up
  under the ``-L`` prefix first) into an :class:`~pyqemu.common.memory.AddressSpace`,
  and describe the result (:class:`~.elf.LoadInfo`).
- :mod:`.stack`: the initial process stack (strings, AT_RANDOM bytes, argc, argv,
  envp and the auxiliary vector) laid out as qemu-user's ``create_elf_tables``, and a
  reader that parses such a stack back (tests, ``/proc/self/auxv``).

Both work only through the AddressSpace protocol (``mmap``/``mprotect``/``munmap``/
``read``/``write``); neither imports unicorn.
"""

from __future__ import annotations
