"""redirgate.vmside: the VM's side of a usbredir connection, for checking routes without a VM.

What QEMU's ``usb-redir`` would speak, on trio: :mod:`.guest`
(`UsbredirGuest`, the guest role of the sans-IO connection with
request/reply calls) and :mod:`.probe` (`redirgate probe`: hello, the
device's descriptors and strings, an ``lsusb -v``-style summary).  The CLI,
the demo, the benchmarks and the tests use it against a gateway route or a
``serve-usb`` port.

It is neither the thin client nor the gateway: it imports only
`redirgate.proto` and `redirgate.transport`, and neither the client nor the
gateway imports it (tests/test_import_rules.py).
"""
