FROM python:3.11-slim
RUN useradd --create-home --uid 1000 twin
WORKDIR /app
COPY pyproject.toml README.md ./
COPY twin ./twin
COPY devices ./devices
RUN pip install --no-cache-dir . && mkdir -p /data && chown twin /data
USER twin
ENV TWIN_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["twin", "serve", "--host", "0.0.0.0", "--port", "8000"]
