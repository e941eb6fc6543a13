"""insider: sends queued SMS messages from a database to an SMS provider at a controlled rate."""

__version__ = "0.1.0"

from insider.config import ConfigError, Settings, load_settings
from insider.domain import Message, MessageStatus, Outcome, SendResult
from insider.ports import Clock, MessageRepository, Observer, SentCache, SentEntry, SmsClient
from insider.sender import BatchReport, BatchSender, SenderOptions
from insider.supervisor import SenderStatus, Supervisor, SupervisorClosed, SupervisorState

__all__ = [
    "BatchReport",
    "BatchSender",
    "Clock",
    "ConfigError",
    "Message",
    "MessageRepository",
    "MessageStatus",
    "Observer",
    "Outcome",
    "SendResult",
    "SenderOptions",
    "SenderStatus",
    "SentCache",
    "SentEntry",
    "Settings",
    "SmsClient",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorState",
    "load_settings",
]
