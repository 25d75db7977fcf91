"""The simulator beside the device runtime: simulated users, fleets of them, derived backbones.

The runtime (``device_sim``'s other modules) is what a device runs; this
subpackage drives it the way a fleet of users would, on the server, to see a
personalization or a backbone replacement before shipping it.
"""
