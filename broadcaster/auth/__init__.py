"""Who a client is (``tokens``: JWT verification) and what it may read (``authorization``)."""
