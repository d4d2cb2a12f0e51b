FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .
# The installed package does not carry config/; point it at the copy here.
ENV RESCENTER_CONFIG=/app/config/defaults.toml
EXPOSE 8080
CMD ["rescenter", "run"]
