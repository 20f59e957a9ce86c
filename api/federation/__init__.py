"""Trusted clusters (docs/federation.md): a root answers its users' questions with its leaves'
audit, asked over tunnels the leaves dial out; no record of a leaf is copied to the root.

``pki`` (certificates, pure), ``tunnel`` (the wire protocol, pure), ``merge`` (merged pages
and cursors, pure), ``files`` (where keys live), ``hub`` (the root's listener and links),
``agent`` (the leaf's tunnel worker), ``routes`` (the root's federated API).
"""
