"""The services layer: one service per concern, over ports (no aiohttp, no database or Triton code here).

Every image goes through the same steps: decode and validate (before any
credit moves), reserve its credits, run the models, write the output, then
complete the job (the charge and the stored result in one transaction) or fail
it (the reservation given back). A single request turns a failure into the
contract's status; a batch turns it into that image's failed result.

``container.Services`` builds them all over one set of ports; the handlers and
the CLI reach them only through it.
"""
