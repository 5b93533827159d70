# mesh-injector: the admission webhook image.
#   docker build -t REGISTRY/mesh-injector:0.1.0 .
# The base is pinned by digest (the same in both stages): a rebuild gets the same Python and
# Debian packages. To move to a newer base, take the digest of the new tag
# (`docker buildx imagetools inspect python:3.11-slim-bookworm`) and replace it in both lines.
#
# Build stage: the dependencies first, in a layer of their own (a change to the source does
# not reinstall them), then the package; wheels only, nothing is compiled.
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
RUN python -m venv /opt/mesh-injector \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/mesh-injector/bin/pip install --only-binary :all: -r requirements.txt
COPY README.md ./
COPY policies ./policies
COPY webhook ./webhook
RUN /opt/mesh-injector/bin/pip install --only-binary :all: --no-deps .

# Final stage: the same slim base, the virtualenv, nothing else; a numeric non-root user.
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16
ENV PATH=/opt/mesh-injector/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/mesh-injector /opt/mesh-injector
USER 10001:10001
EXPOSE 8443 9090
# For `docker run`; in Kubernetes the Deployment's probes do this. /healthz answers over the
# webhook's own TLS (its certificate is not for 127.0.0.1, hence no verification here).
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; u.urlopen('https://127.0.0.1:' + os.environ.get('MESH_INJECTOR_PORT', '8443') + '/healthz', timeout=2, context=ssl._create_unverified_context())"]
ENTRYPOINT ["mesh-injector"]
CMD ["serve"]
