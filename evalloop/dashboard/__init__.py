"""``evalloop dashboard``: one page on loopback over the same stores as ``evalloop status``.

``views`` computes what the page shows (pure), ``svg`` draws the charts (pure, no JavaScript and
no CDN), ``page`` assembles the HTML, ``sources`` reads Redis, Kafka and the gate artifacts, and
``server`` answers HTTP. docs/dashboard.md.
"""
