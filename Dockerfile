# MicroscopyMatching web app (Gradio) on CPU.
#   docker build -t microscopymatching .
#   docker run --rm -p 7860:7860 microscopymatching        -> http://localhost:7860
# With an NVIDIA GPU and the LDM engine, see docs/gpu-and-spaces.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860

# Non-root user; Hugging Face's cache (LDM weights, when used) lives in its home.
RUN useradd --create-home --uid 1000 app
WORKDIR /home/app/microscopymatching

# torch==2.13.0 is pinned in requirements.txt; the extra index makes pip take the
# CPU-only wheel (the default PyPI wheel pulls in the CUDA libraries, several GB).
COPY requirements.txt .
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY --chown=1000:1000 . .
USER 1000

EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0"]
