"""USB device access and the usbredir host engine.

`selector` finds devices, `device` opens one and runs its blocking pyusb calls
in worker threads, `engine` serves one usbredir connection for it, `streams`
owns the endpoint streams (iso, interrupt receiving, bulk receiving) and
`outbox` the ordered, bounded send queue with the reference's drop policy.
"""
