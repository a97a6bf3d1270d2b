"""Running kwsd in a container image and as a Home Assistant add-on.

`container` is the image's entrypoint (config from /config, model into /data on first
start, PulseAudio capture, health targets), `probe` the HEALTHCHECK, `supervisor` the
few Home Assistant Supervisor calls an add-on makes, and `addon` maps the add-on's
options to a kwsd config. Nothing here is imported by the daemon itself.
"""
