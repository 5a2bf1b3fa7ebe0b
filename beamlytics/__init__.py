"""beamlytics: find anomalous hosts in network traffic logs and captures with Apache Beam."""

__version__ = "0.1.0"
