"""Dashboard: recorded vs predicted power, using the random forest from model_rf.ipynb.

    python app.py          # then open http://127.0.0.1:8050

Paths come from DATA_PATH and MODEL_PATH (defaults: data/processed.csv, outputs/model_rf.pkl).
"""
import os
import pickle

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

DATA_PATH = os.environ.get("DATA_PATH", "data/processed.csv")
MODEL_PATH = os.environ.get("MODEL_PATH", "outputs/model_rf.pkl")

df = pd.read_csv(DATA_PATH, index_col=0, parse_dates=True)
model = pickle.load(open(MODEL_PATH, "rb"))
features = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
pred = pd.DataFrame(model.predict(df[features]), index=df.index, columns=["solar_GW", "wind_GW"])

app = Dash(__name__)
server = app.server

app.layout = html.Div([
    html.H1("Wind & solar power in Germany"),
    dcc.Dropdown(id="target", options=["solar_GW", "wind_GW"], value="wind_GW", clearable=False),
    dcc.Slider(id="days", min=1, max=28, step=1, value=7, marks={1: "1 day", 7: "1 week", 28: "4 weeks"}),
    dcc.Graph(id="graph"),
])


@app.callback(Output("graph", "figure"), Input("target", "value"), Input("days", "value"))
def update_graph(target, days):
    start = df.index.max() - pd.Timedelta(days=days)
    fig = go.Figure()
    fig.add_scatter(x=df.index[df.index > start], y=df.loc[df.index > start, target], name="recorded")
    fig.add_scatter(x=pred.index[pred.index > start], y=pred.loc[pred.index > start, target], name="predicted")
    fig.update_layout(yaxis_title="GW")
    return fig


if __name__ == "__main__":
    app.run(debug=True)
