"""Entry point: ``gunicorn -c gunicorn.conf.py app:app`` on Linux, ``python app.py`` anywhere."""

if __name__ == "__main__":  # gunicorn's gevent worker patches by itself; here we do it first
    from gevent import monkey

    monkey.patch_all()

from qwenproxy import create_app

app = create_app()

if __name__ == "__main__":
    from qwenproxy.runtime.serve import main

    main(app)
