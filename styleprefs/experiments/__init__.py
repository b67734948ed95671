"""Experiments that show behaviour in the miniature world (``mini``, ``mini-clip``): ``styleprefs experiment``."""
