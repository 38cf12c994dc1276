"""The model tier's session: image embeddings kept next to the encoder and decoder.

``maskserve.session`` runs inside Triton (the ``sam2_session`` python-backend
model calls the encoder and decoder models through BLS); it imports only the
core, so it can be tested without Triton.
"""
