@echo off
rem qwenproxy on Windows: gunicorn does not run here, so app.py serves with gevent's WSGI server
rem (one process: the same routes, /health and /metrics, the account menu; Ctrl+C to stop).
setlocal
cd /d "%~dp0"
chcp 65001 >nul
set PYTHONUTF8=1
if not exist .venv\Scripts\python.exe (
  echo Creating virtual environment...
  py -3 -m venv .venv 2>nul || python -m venv .venv
  if not exist .venv\Scripts\python.exe (
    echo Python 3.10 or newer is needed: install it, then run start.bat again.
    pause
    exit /b 1
  )
  .venv\Scripts\python.exe -m pip install -U pip
)
.venv\Scripts\python.exe -m pip install -q -r requirements.txt
if not exist .env copy .env.example .env >nul
.venv\Scripts\python.exe app.py
if errorlevel 1 pause
