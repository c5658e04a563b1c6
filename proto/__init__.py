"""redirgate.proto: sans-IO codecs.

Parsers take bytes and yield typed events; serializers take messages and give
bytes.  Nothing here may import trio, socket, ssl, threading, usb or serial,
or log: tests/proto/test_layering.py checks `sys.modules` after importing it.
"""
