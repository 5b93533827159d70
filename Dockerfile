# mesh-injector: the admission webhook image.
#   docker build -t ghcr.io/mesh-injector/mesh-injector:0.1.0 .
# Build stage: install the package and its dependencies into a virtualenv (wheels only).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY policies ./policies
COPY webhook ./webhook
RUN python -m venv /opt/mesh-injector \
    && /opt/mesh-injector/bin/pip install --prefer-binary .

# Final stage: the same slim base, the virtualenv, nothing else; a numeric non-root user.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/mesh-injector/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/mesh-injector /opt/mesh-injector
USER 10001:10001
EXPOSE 8443 9090
ENTRYPOINT ["mesh-injector"]
CMD ["serve"]
