"""The fleet simulator: simulated users, fleets of them on Ray, derived backbones.

It runs on the server and drives the device runtime (:mod:`device_sim`) the way a fleet of users would, to see a
personalization or a backbone replacement before shipping it. The runtime never imports it
(``tests/test_import_graph.py``).
"""
