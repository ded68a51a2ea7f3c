# ChestCOVNet XAI: the Streamlit app on the bundled model, CPU only.
# Not built on the development machine (no Docker engine there); kept deliberately simple.
#   docker build -t chestcovnet-xai .
#   docker run --rm -p 8501:8501 chestcovnet-xai      # then open http://localhost:8501
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    MALLOC_ARENA_MAX=2
# MALLOC_ARENA_MAX=2: glibc's per-thread malloc arenas fragment under Streamlit's session threads; over 200
# explanations the server's RSS drifted from ~1.0 to ~1.3 GB with the default and stayed flat near 0.85 GB
# with 2 arenas (benchmarks/load_app.py memory).

WORKDIR /app

# CPU-only torch wheels first (the default index would pull the multi-GB CUDA build).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# Runtime dependencies (torch pins above are already satisfied), then the project itself.
COPY requirements.txt pyproject.toml README.md ./
RUN pip install -r requirements.txt
COPY xai ./xai
COPY models ./models
RUN pip install --no-deps .
COPY app.py ./
COPY pages ./pages
COPY samples ./samples
COPY .streamlit ./.streamlit
# The app's bytecode once at build time: PYTHONDONTWRITEBYTECODE (above) would otherwise have every start
# compile its ~20k lines again (~0.3 s of each cold start).
RUN python -m compileall -q app.py pages xai models

RUN useradd --create-home --uid 10001 app && chown -R app:app /app
USER app

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4).status != 200)"

# Inside the container the server must listen on all interfaces; publish the port only where intended.
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
