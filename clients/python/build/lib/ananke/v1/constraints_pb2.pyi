from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GrammarSyntax(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAMMAR_SYNTAX_UNSPECIFIED: _ClassVar[GrammarSyntax]
    GRAMMAR_SYNTAX_LARK: _ClassVar[GrammarSyntax]
    GRAMMAR_SYNTAX_GBNF: _ClassVar[GrammarSyntax]

class Combinator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMBINATOR_UNSPECIFIED: _ClassVar[Combinator]
    COMBINATOR_SEQUENCE: _ClassVar[Combinator]
    COMBINATOR_ANY_OF: _ClassVar[Combinator]
    COMBINATOR_ALL_OF: _ClassVar[Combinator]

class ConstraintKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSTRAINT_KIND_UNSPECIFIED: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_JSON_SCHEMA: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_REGEX: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_GRAMMAR_LARK: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_GRAMMAR_GBNF: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_CHOICE: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_TOKEN_MASK: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_SEQUENCE: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_ANY_OF: _ClassVar[ConstraintKind]
    CONSTRAINT_KIND_ALL_OF: _ClassVar[ConstraintKind]
GRAMMAR_SYNTAX_UNSPECIFIED: GrammarSyntax
GRAMMAR_SYNTAX_LARK: GrammarSyntax
GRAMMAR_SYNTAX_GBNF: GrammarSyntax
COMBINATOR_UNSPECIFIED: Combinator
COMBINATOR_SEQUENCE: Combinator
COMBINATOR_ANY_OF: Combinator
COMBINATOR_ALL_OF: Combinator
CONSTRAINT_KIND_UNSPECIFIED: ConstraintKind
CONSTRAINT_KIND_JSON_SCHEMA: ConstraintKind
CONSTRAINT_KIND_REGEX: ConstraintKind
CONSTRAINT_KIND_GRAMMAR_LARK: ConstraintKind
CONSTRAINT_KIND_GRAMMAR_GBNF: ConstraintKind
CONSTRAINT_KIND_CHOICE: ConstraintKind
CONSTRAINT_KIND_TOKEN_MASK: ConstraintKind
CONSTRAINT_KIND_SEQUENCE: ConstraintKind
CONSTRAINT_KIND_ANY_OF: ConstraintKind
CONSTRAINT_KIND_ALL_OF: ConstraintKind

class ConstraintIR(_message.Message):
    __slots__ = ("name", "priority", "json_schema", "regex", "grammar", "choice", "token_mask", "composite")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_MASK_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    name: str
    priority: int
    json_schema: JsonSchemaConstraint
    regex: RegexConstraint
    grammar: GrammarConstraint
    choice: ChoiceConstraint
    token_mask: TokenMaskConstraint
    composite: CompositeConstraint
    def __init__(self, name: _Optional[str] = ..., priority: _Optional[int] = ..., json_schema: _Optional[_Union[JsonSchemaConstraint, _Mapping]] = ..., regex: _Optional[_Union[RegexConstraint, _Mapping]] = ..., grammar: _Optional[_Union[GrammarConstraint, _Mapping]] = ..., choice: _Optional[_Union[ChoiceConstraint, _Mapping]] = ..., token_mask: _Optional[_Union[TokenMaskConstraint, _Mapping]] = ..., composite: _Optional[_Union[CompositeConstraint, _Mapping]] = ...) -> None: ...

class JsonSchemaConstraint(_message.Message):
    __slots__ = ("schema", "options")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    schema: str
    options: JsonSchemaOptions
    def __init__(self, schema: _Optional[str] = ..., options: _Optional[_Union[JsonSchemaOptions, _Mapping]] = ...) -> None: ...

class JsonSchemaOptions(_message.Message):
    __slots__ = ("whitespace_flexible", "lenient", "coerce_one_of", "item_separator", "key_separator")
    WHITESPACE_FLEXIBLE_FIELD_NUMBER: _ClassVar[int]
    LENIENT_FIELD_NUMBER: _ClassVar[int]
    COERCE_ONE_OF_FIELD_NUMBER: _ClassVar[int]
    ITEM_SEPARATOR_FIELD_NUMBER: _ClassVar[int]
    KEY_SEPARATOR_FIELD_NUMBER: _ClassVar[int]
    whitespace_flexible: bool
    lenient: bool
    coerce_one_of: bool
    item_separator: str
    key_separator: str
    def __init__(self, whitespace_flexible: _Optional[bool] = ..., lenient: _Optional[bool] = ..., coerce_one_of: _Optional[bool] = ..., item_separator: _Optional[str] = ..., key_separator: _Optional[str] = ...) -> None: ...

class RegexConstraint(_message.Message):
    __slots__ = ("pattern",)
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    def __init__(self, pattern: _Optional[str] = ...) -> None: ...

class GrammarConstraint(_message.Message):
    __slots__ = ("syntax", "text")
    SYNTAX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    syntax: GrammarSyntax
    text: str
    def __init__(self, syntax: _Optional[_Union[GrammarSyntax, str]] = ..., text: _Optional[str] = ...) -> None: ...

class ChoiceConstraint(_message.Message):
    __slots__ = ("options",)
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, options: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenMaskConstraint(_message.Message):
    __slots__ = ("allowed_token_ids", "forbidden_token_ids")
    ALLOWED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FORBIDDEN_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    allowed_token_ids: _containers.RepeatedScalarFieldContainer[int]
    forbidden_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, allowed_token_ids: _Optional[_Iterable[int]] = ..., forbidden_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CompositeConstraint(_message.Message):
    __slots__ = ("combinator", "parts")
    COMBINATOR_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    combinator: Combinator
    parts: _containers.RepeatedCompositeFieldContainer[ConstraintIR]
    def __init__(self, combinator: _Optional[_Union[Combinator, str]] = ..., parts: _Optional[_Iterable[_Union[ConstraintIR, _Mapping]]] = ...) -> None: ...
