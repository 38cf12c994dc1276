"""The records the service works with, and the kinds and statuses they take.

Plain dataclasses, enums and request declarations with no I/O, shared by
every layer above: the store returns them, the services pass them around,
the handlers serialise them. One module per subject: ``accounts`` (keys,
rate limits, idempotency), ``jobs`` (jobs, batches, async requests and their
files), ``models`` (model versions, routing, shadow traffic),
``requests`` (each endpoint's parameters, declared once) and ``responses``
(the contract's JSON shapes). Money rules live with the store.
"""
