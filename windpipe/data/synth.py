"""A deterministic generator of raw files shaped like the Open Power System Data downloads.

Physics, roughly: solar power follows direct and diffuse radiation (sun elevation times a
cloud process), wind power follows wind speed cubed up to the turbines' rated speed;
temperature and wind carry daily and seasonal cycles. Capacity grows over the years as in
Germany. Some rows go missing, as in the real files, so the process step has work to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_path

TIMESERIES_FILE = "time_series_60min_singleindex.csv"
WEATHER_FILE = "weather_data.csv"
LATITUDE = np.deg2rad(51.0)
# installed capacity (MW) at the start and its growth per year, as a fraction of the start
SOLAR_MW, SOLAR_GROWTH = 35_000.0, 0.05
WIND_MW, WIND_GROWTH = 30_000.0, 0.21
# persistent gaps between the national-average weather and the weather at the parks (AR(1) sigmas)
SOLAR_NOISE, WIND_NOISE = 0.10, 0.04
FIRST_YEAR, LAST_YEAR = 1900, 2200  # the years the generator accepts


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """An AR(1) series (weather persists from hour to hour)."""
    from scipy.signal import lfilter

    return lfilter([1.0], [1.0, -phi], rng.normal(0.0, sigma, n))


def generate(seed: int = 42, start_year: int = 2013, years: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (power time series, weather) frames with OPSD column names, hourly, UTC.

    They start six hours before `start_year` so the process step's "2013 on" cut is exercised.
    """
    if years < 1:
        raise WindpipeError(f"years must be at least 1 (got {years}).", "pass --years 1 or more")
    if not FIRST_YEAR <= start_year <= LAST_YEAR - years:  # (pandas timestamps end in 2262)
        raise WindpipeError(f"The start year {start_year} is out of range: with {years} year(s) the data must lie "
                            f"between {FIRST_YEAR} and {LAST_YEAR}.", "pass e.g. --start 2013")
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(f"{start_year}-01-01", tz="UTC") - pd.Timedelta(hours=6)
    end = pd.Timestamp(f"{start_year + years}-01-01", tz="UTC")
    ts = pd.date_range(start, end, freq="h", inclusive="left")
    n = len(ts)
    doy = ts.dayofyear.to_numpy()
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60
    season = np.cos(2 * np.pi * (doy - 172) / 365.25)  # +1 at midsummer, -1 at midwinter

    # sun: elevation from declination and hour angle (Germany ~ UTC+0.7 h solar time)
    decl = np.deg2rad(23.44) * season
    hour_angle = np.deg2rad(15.0 * (hour + 0.7 - 12.0))
    sin_el = np.sin(LATITUDE) * np.sin(decl) + np.cos(LATITUDE) * np.cos(decl) * np.cos(hour_angle)
    sun = np.clip(sin_el, 0.0, None)
    cloud = 1 / (1 + np.exp(-(_ar1(rng, n, 0.97, 0.35) - 0.2 * season)))  # 0 clear .. 1 overcast
    clear_sky = 1000.0 * sun**1.15
    direct = clear_sky * (1 - 0.85 * cloud) * 0.75
    diffuse = clear_sky * (0.12 + 0.28 * cloud) + rng.normal(0, 3, n) * (sun > 0)
    diffuse = np.clip(diffuse, 0, None)

    temperature = 9.5 + 8.5 * season + 3.5 * sun * (1 - 0.5 * cloud) + _ar1(rng, n, 0.98, 0.45)
    wind_speed = np.clip(np.exp(1.3 - 0.15 * season + _ar1(rng, n, 0.985, 0.065)) + 0.3 * np.sin(
        2 * np.pi * (hour - 15) / 24), 0.3, None)

    # capacity grows as Germany's did in 2013-2016: wind output rose ~60 % at similar wind speeds
    years_in = (ts - ts[0]).total_seconds().to_numpy() / (365.25 * 86400)
    solar_cap = SOLAR_MW * (1 + SOLAR_GROWTH * years_in)
    wind_cap = WIND_MW * (1 + WIND_GROWTH * years_in)
    # the weather columns are national averages: the weather at the parks differs from them for
    # hours to days (persistent noise), which caps how well any model can do (r2 ~0.87 as on the real data)
    solar_noise = np.exp(_ar1(rng, n, 0.9, SOLAR_NOISE))
    solar_mw = solar_cap * (0.00085 * direct + 0.0007 * diffuse) * (1 - 0.004 * (temperature - 25).clip(0))
    solar_mw = np.clip(solar_mw * solar_noise * (1 + rng.normal(0, 0.04, n)), 0, None)
    hub = 1.45 * wind_speed * np.exp(_ar1(rng, n, 0.95, WIND_NOISE))  # turbines stand higher than 10 m
    cut_in, rated = 3.0, 11.0
    wind_cf = np.clip((hub**3 - cut_in**3) / (rated**3 - cut_in**3), 0.0, 1.0) * 0.85 + 0.01
    wind_mw = np.clip(wind_cap * wind_cf * (1 + rng.normal(0, 0.08, n)), 50, None)

    stamps = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    power = pd.DataFrame({
        "utc_timestamp": stamps,
        "cet_cest_timestamp": ts.tz_convert("Europe/Berlin").strftime("%Y-%m-%dT%H:%M:%S%z"),
        "DE_load_actual_entsoe_transparency": np.round(55_000 + 10_000 * np.sin(np.pi * hour / 24), 1),
        "DE_solar_generation_actual": np.round(solar_mw, 1),
        "DE_wind_generation_actual": np.round(wind_mw, 1),
    })
    weather = pd.DataFrame({
        "utc_timestamp": stamps,
        "DE_windspeed_10m": np.round(wind_speed, 4),
        "DE_temperature": np.round(temperature, 3),
        "DE_radiation_direct_horizontal": np.round(direct, 4),
        "DE_radiation_diffuse_horizontal": np.round(diffuse, 4),
    })
    # the real files have gaps: blank out ~0.1 % of the generation values
    gaps = rng.choice(n, size=max(1, n // 1000), replace=False)
    power.loc[gaps[: len(gaps) // 2], "DE_solar_generation_actual"] = np.nan
    power.loc[gaps[len(gaps) // 2:], "DE_wind_generation_actual"] = np.nan
    return power, weather


def write_raw(out: Path | str, seed: int = 42, start_year: int = 2013, years: int = 4) -> list[Path]:
    """Write both raw CSV files into `out` (atomically) and return their paths."""
    out = Path(out)
    power, weather = generate(seed, start_year, years)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WindpipeError(f"Cannot create the output folder {out} ({exc.strerror}).",
                            "choose a writable --out folder") from None
    paths = []
    for frame, name in ((power, TIMESERIES_FILE), (weather, WEATHER_FILE)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
        paths.append(out / name)
    return paths
