"""The wire formats, sans-I/O: the native protocol, Phoenix framing, Supabase's
``postgres_changes``, filters (their grammar, evaluated on ``rows`` in Python,
compiled to SQL on published tables), frames.

Parsing client messages and encoding server ones, with plain data in and out;
``tests/unit/test_sans_io.py`` checks that no module here loads an I/O library.
"""
