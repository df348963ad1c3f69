from feast import Entity, ValueType

member = Entity(
    name="member",
    join_keys=["member_id"],
    value_type=ValueType.STRING,
    description="Loyalty programme member (pseudonymous id).",
)
