"""A throwaway guest VM: Debian's kernel + a busybox initramfs under QEMU TCG.

`image` builds and caches the guest, `qemu` boots it and reads what its
script reports on the console.  The end-to-end tests and `redirgate demo
--vm` share it; nothing else in redirgate needs it.
"""
