@echo off
rem qwenproxy on Windows: gunicorn does not run here, so app.py serves with gevent's WSGI server.
cd /d "%~dp0"
if not exist .venv\Scripts\python.exe (
  echo Creating virtual environment...
  py -3 -m venv .venv || python -m venv .venv
  .venv\Scripts\python.exe -m pip install -U pip
)
.venv\Scripts\python.exe -m pip install -q -r requirements.txt
if not exist .env copy .env.example .env >nul
.venv\Scripts\python.exe app.py
