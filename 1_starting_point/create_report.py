"""Weekly report: recorded vs predicted solar and wind power for the last week of data.

Run the notebooks first (make_processed_data, then model_rf), then:

    python create_report.py                      # data/processed.csv + outputs/model_rf.pkl -> report.html
    python create_report.py --data my.csv --model outputs/model_rf.pkl --out report.html
"""
import argparse
import datetime
import os
import pickle

import pandas as pd
import plotly.graph_objects as go
from sklearn.metrics import r2_score

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="data/processed.csv")
parser.add_argument("--model", default="outputs/model_rf.pkl")
parser.add_argument("--out", default="report.html")
parser.add_argument("--days", type=int, default=7)
args = parser.parse_args()

df = pd.read_csv(args.data, index_col=0, parse_dates=True)
df = df[df.index > df.index.max() - pd.Timedelta(days=args.days)]
model = pickle.load(open(args.model, "rb"))

features = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
pred = model.predict(df[features])

html = "<html><head><meta charset='utf-8'><title>Wind & solar weekly report</title></head><body>"
html += "<h1>Wind &amp; solar: weekly report</h1>"
html += f"<p>Data {df.index.min():%Y-%m-%d} to {df.index.max():%Y-%m-%d}, model {os.path.basename(args.model)}, "
html += f"made {datetime.datetime.now():%Y-%m-%d %H:%M}</p>"
for i, target in enumerate(["solar_GW", "wind_GW"]):
    fig = go.Figure()
    fig.add_scatter(x=df.index, y=df[target], name="recorded")
    fig.add_scatter(x=df.index, y=pred[:, i], name="predicted")
    fig.update_layout(title=f"{target} (r2 {r2_score(df[target], pred[:, i]):.2f})", yaxis_title="GW")
    html += fig.to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False)
html += "</body></html>"

with open(args.out, "w") as f:
    f.write(html)
print("wrote", args.out)
