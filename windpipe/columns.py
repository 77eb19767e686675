"""The column names every part of windpipe shares (re-exported by windpipe.entities).

A module of its own, without imports, so that light processes (the marts writer) need not import pandas.
"""

TIMESTAMP = "utc_timestamp"
FEATURES = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
TARGETS = ["solar_GW", "wind_GW"]
