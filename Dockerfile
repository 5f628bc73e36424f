# The nightly payout job as a container image (for the Kubernetes CronJob in deploy/kubernetes/).
# No secrets here: credentials and DSNs arrive at run time as BATCH_* environment variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY batch ./batch
COPY sql ./sql
# The wheel carries only the Python package; the numbered migrations go beside it, where
# batch.adapters.migrations.sql_root() looks for packaged data (run from / so /app/batch is not imported).
RUN pip install . \
    && cd / && cp -r /app/sql "$(python -c 'import batch, pathlib; print(pathlib.Path(batch.__file__).parent)')/sql" \
    && groupadd --system --gid 10001 batch \
    && useradd --system --uid 10001 --gid batch --home-dir /app --no-create-home batch

# The config file is mounted at /etc/batch (a ConfigMap); reports go under /var/lib/batch
# (run.report_dir in that file; an emptyDir or a volume in Kubernetes).
ENV BATCH_CONFIG=/etc/batch/batch.toml
RUN mkdir -p /var/lib/batch/reports && chown -R batch:batch /var/lib/batch

USER 10001:10001
ENTRYPOINT ["batch"]
CMD ["run", "--trigger", "cron"]
