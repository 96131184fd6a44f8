"""Who a client is (``tokens``: JWT verification, with ``keys`` and ``jwks``) and what it may
read (``authorization``)."""
