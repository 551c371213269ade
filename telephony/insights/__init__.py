"""Post-call insights: a call's transcript through Deepgram Text Intelligence (`/v1/read`).

- `text.py`: the transcript as the text we send, and segments mapped back onto turns;
- `analyze.py`: one call analysed and stored (shared by the worker and `telephony insights run`);
- `worker.py`: the app's background worker, fed as calls end, with retries and a sweep.
"""
