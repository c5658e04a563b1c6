"""redirgate.client: the thin-client side.

Device access (pyusb, pyserial, parallel ports), the usbredir host engine,
export policy, standalone listeners and the tunnel service.  Imports
`redirgate.proto` and the shared `redirgate.transport`; never imports
`redirgate.gateway` (tests/test_import_rules.py).
"""
